import os

# Tests run with development settings; the test command picks the database (DATABASE_URL).
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("SECRET_KEY", "test-secret-key")
