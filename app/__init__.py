"""The face-swap app: photos and videos through a student checkpoint or an exported model (`distilswap swap`)."""
