"""The kade command line: wires registry/, builder/ and deployer/ together."""
