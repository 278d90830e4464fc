package sshfleet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// aptLock serialises installs across test binaries that go test runs in
// parallel; the check for sshd is repeated under it, so apt-get update and
// install run at most once per machine. This replaces a sync.Once: the
// state that matters lives on disk, not in the process.
const aptLock = "/tmp/drover-sshfleet-apt.lock"

// ensureSSHD installs openssh-server from Debian when /usr/sbin/sshd is
// missing, or skips the test saying why it cannot.
func ensureSSHD(t testing.TB) {
	t.Helper()
	if isExecutable(SSHD) {
		return
	}
	if os.Geteuid() != 0 {
		t.Skipf("sshfleet: %s is missing and installing openssh-server needs root (run `make deps` as root)", SSHD)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skipf("sshfleet: %s is missing and there is no apt-get to install openssh-server", SSHD)
	}
	unlock, err := lockFile(aptLock)
	if err != nil {
		t.Skipf("sshfleet: %s is missing; lock %s: %v", SSHD, aptLock, err)
	}
	defer unlock()
	if isExecutable(SSHD) { // another test binary installed it while we waited
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t.Logf("sshfleet: %s missing; installing openssh-server with apt-get", SSHD)
	apt := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"-o", "DPkg::Lock::Timeout=300", "-qq"}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, tail(out, 2000))
		}
		return nil
	}
	if err := apt("update"); err != nil {
		t.Skipf("sshfleet: cannot install openssh-server: %v", err)
	}
	if err := apt("install", "-y", "--no-install-recommends", "openssh-server"); err != nil {
		t.Skipf("sshfleet: cannot install openssh-server: %v", err)
	}
	// Debian starts the system sshd on install; the tests run their own,
	// and this machine had none before.
	_ = exec.CommandContext(ctx, "service", "ssh", "stop").Run()
	if !isExecutable(SSHD) {
		t.Skipf("sshfleet: installed openssh-server but %s is still missing", SSHD)
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
