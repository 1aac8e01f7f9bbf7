"""After deployment: drift of recent records, live performance against arrived outcomes, simulated outcomes."""
