"""The user commands over the roles: experiments, lth, diagnose, report, eval, export, show."""
