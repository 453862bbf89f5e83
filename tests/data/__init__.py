"""Tests of metashot.data (a package, so that test module names never clash with other test folders)."""
