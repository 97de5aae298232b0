"""``python -m prism.validator``."""

from prism.validator.loop import main

raise SystemExit(main())
