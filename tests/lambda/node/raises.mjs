// A handler that fails: the whole batch is ProcessingFailed with this message.
export const handler = async () => {
    throw new TypeError('the upstream schema changed');
};
