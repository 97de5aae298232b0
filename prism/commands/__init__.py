"""Command groups of the ``prism`` CLI (see ``prism.cli``)."""
