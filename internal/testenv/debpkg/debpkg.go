// Package debpkg installs the Debian packages drover's tests run against
// (openssh-server, postgresql, mariadb-server) when they are missing. One
// file lock serialises installs across the test binaries `go test` runs in
// parallel, and the check is repeated under it, so each package is
// installed at most once per machine.
package debpkg

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// lockPath is shared by every test binary on the machine.
const lockPath = "/tmp/drover-test-apt.lock"

// Ensure returns nil when have() reports the package's programs present,
// installing pkg with apt-get first if needed. afterInstall, when given, is
// a command run after the install: it stops the system service the package
// starts, because tests run their own servers.
func Ensure(pkg string, have func() bool, afterInstall ...string) error {
	if have() {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s is not installed and installing it needs root (run `make deps` as root)", pkg)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("%s is not installed and there is no apt-get", pkg)
	}
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lockPath, err)
	}
	defer syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	if have() { // another test binary installed it while we waited
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	apt := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"-o", "DPkg::Lock::Timeout=300", "-qq"}, args...)...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, Tail(out, 2000))
		}
		return nil
	}
	if err := apt("update"); err != nil {
		return err
	}
	if err := apt("install", "-y", "--no-install-recommends", pkg); err != nil {
		return err
	}
	if len(afterInstall) > 0 {
		_ = exec.CommandContext(ctx, afterInstall[0], afterInstall[1:]...).Run()
	}
	if !have() {
		return fmt.Errorf("installed %s but its programs are still missing", pkg)
	}
	return nil
}

// Tail returns the last n bytes of b, for quoting a command's output.
func Tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
