//! Starting and stopping the child processes of `adclick demo`.
