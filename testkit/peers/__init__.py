"""Real peers for tests/integration/test_peer_matrix.py: a Flask app, a grpcio server, a Node client."""
