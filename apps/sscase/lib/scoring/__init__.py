"""sscase MONAI Label app: scoring."""
