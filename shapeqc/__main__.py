"""`python -m shapeqc ...` (also under torchrun) runs the command line."""

from shapeqc.cli import main

raise SystemExit(main())
