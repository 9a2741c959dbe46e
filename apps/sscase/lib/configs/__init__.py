"""sscase MONAI Label app: configs."""
