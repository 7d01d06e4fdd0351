"""dltui's front side: the `dltui` command line and the Textual dashboard (never imports torch)."""
