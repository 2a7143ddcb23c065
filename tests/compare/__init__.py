"""Tests of `nestdsl compare`: parameter matching, the end-to-end report, resuming."""
