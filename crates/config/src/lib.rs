//! Configuration: YAML to a validated Config with located errors
