"""CPU configs: the best recipe known for ~20 minutes on 2 cores, its 2-minute demo, and two models at its cost."""
