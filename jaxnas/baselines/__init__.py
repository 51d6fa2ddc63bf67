"""Hand-designed baselines the SCNAS paper compares against (uresnet: its 3D U-ResNet)."""
