package release

// SetSyncFS replaces how e makes a release's files durable; f receives the
// release dir. Tests wrap the real sync with it to check when it runs.
func SetSyncFS(e *Engine, f func(dir string) error) { e.syncFS = f }

// SyncFS is the real sync of the filesystem holding dir.
func SyncFS(dir string) error { return syncFS(dir) }
