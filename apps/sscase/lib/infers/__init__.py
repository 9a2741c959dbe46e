"""sscase MONAI Label app: infers."""
