# A handler that fails: the whole batch is ProcessingFailed with this message.
def lambda_handler(event, context):
    raise ValueError('the upstream schema changed')
