"""Former name of the mmseg trainer (it trains SegFormer too now): `python -m train.mmseg_upernet` runs train.mmseg_train."""

from train.mmseg_train import main

if __name__ == "__main__":
    main()
