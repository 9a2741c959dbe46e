"""sscase MONAI Label app: trainers."""
