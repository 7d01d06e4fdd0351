"""The dashboard's tab panes: each draws one part of the run from the app's snapshot."""
