"""What a stage runs within: thread pools sized to its task slot, and memory given back between steps."""
