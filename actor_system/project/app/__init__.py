"""{{service}}: its actors, and the Lambda module that runs them."""
