package sshfleet

import (
	"os"
	"syscall"
	"testing"

	"github.com/drover/drover/internal/testenv/debpkg"
)

// ensureSSHD installs openssh-server from Debian when /usr/sbin/sshd is
// missing, or skips the test saying why it cannot.
func ensureSSHD(t testing.TB) {
	t.Helper()
	have := func() bool { return isExecutable(SSHD) }
	if !have() {
		t.Logf("sshfleet: %s missing; installing openssh-server with apt-get", SSHD)
	}
	// Debian starts the system sshd on install; the tests run their own.
	if err := debpkg.Ensure("openssh-server", have, "service", "ssh", "stop"); err != nil {
		t.Skipf("sshfleet: %v", err)
	}
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// lockFile takes an exclusive flock on path, waiting for other holders.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
