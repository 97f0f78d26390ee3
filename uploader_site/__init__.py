import os

# Should awscrt be installed (another package may bring it), botocore, seeing it, would switch its
# own SigV4 signing to the CRT, whose signer cannot take a stream that does not seek (imports
# stream into S3). botocore stays as without awscrt. Set here, the first module of every process
# of the product, before anything imports botocore.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")
