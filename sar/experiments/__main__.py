"""``python -m sar.experiments NAME``: run, merge or render one experiment grid."""

from .cli import main

main()
