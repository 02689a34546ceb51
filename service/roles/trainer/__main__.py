"""`python -m hotprune.roles.trainer`: the same process as `hotprune trainer`, and its exit code."""

from hotprune.roles.entry import role_main
from hotprune.roles.trainer import main

role_main(main, "trainer", uses_torch=True)
