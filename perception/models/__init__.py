"""The BEV model's parts, one file each. Importing this package does not import torch; the parts do."""
