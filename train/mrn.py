"""Old name of `python -m train.mrn_wsi_tiles` (the MRN trainer for whole-slide tile sets), kept for one release."""

from train.mrn_wsi_tiles import main

if __name__ == "__main__":
    main()
