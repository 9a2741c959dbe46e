"""The sscase MONAI Label app's task wiring: configs, infers, trainers, active learning and scoring."""
