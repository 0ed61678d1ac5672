"""python -m wanvideo_vae: see wanvideo_vae.cli."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
