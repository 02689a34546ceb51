"""Run housekeeping: run directories, cleanup, the log reader, the kept files, metrics and the console view."""
