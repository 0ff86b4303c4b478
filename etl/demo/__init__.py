"""The demo and the harness tests, bench and chaos share: embedded servers, process groups."""
