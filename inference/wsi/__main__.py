"""`python -m inference.wsi`: predict whole slides (inference.wsi.predict)."""

from inference.wsi.predict import main

if __name__ == "__main__":
    main()
