"""One small adapter module per external system (S3, Kafka, PostgreSQL, Ray Serve)."""
