//! Harness for the root-only multi-host tests.
