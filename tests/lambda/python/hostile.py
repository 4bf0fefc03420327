# Hostile handlers: one never returns, one allocates without end.
def spin(event, context):
    while True:
        pass


def hoard(event, context):
    hoard = []
    while True:
        hoard.append(bytearray(16 * 1024 * 1024))
