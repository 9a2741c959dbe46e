"""sscase MONAI Label app: activelearning."""
