"""The shape prior: the IF-Net, its inferers (reconstruction) and test-time refinement."""
