"""Fast tests: pure logic and the node's modules under the unix port, no broker, no node process."""
