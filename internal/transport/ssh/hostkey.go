package ssh

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// HostKeyProblem is why a host key was refused.
type HostKeyProblem int

// The reasons a host key is refused.
const (
	HostKeyUnknown HostKeyProblem = iota + 1 // the host is not in known_hosts
	HostKeyChanged                           // known_hosts holds a different key for the host
	HostKeyRevoked                           // known_hosts marks the key @revoked
)

// HostKeyError is a host key drover refused to trust. Callers branch on
// Problem; Error explains what to do.
type HostKeyError struct {
	Host        string         // the address as checked: host:port
	Problem     HostKeyProblem // why the key was refused
	KeyType     string         // type of the key the host offered, e.g. ssh-ed25519
	Fingerprint string         // SHA256 fingerprint of that key, "SHA256:..."
	KnownHosts  string         // the known_hosts file consulted
	Known       []string       // for HostKeyChanged/Revoked: "file:line" of the entries that disagree
}

// Error explains the refusal and how to fix it.
func (e *HostKeyError) Error() string {
	host, port, _ := net.SplitHostPort(e.Host)
	switch e.Problem {
	case HostKeyChanged:
		return fmt.Sprintf("host key for %s HAS CHANGED: it now offers %s %s, which does not match %s. "+
			"Someone may be intercepting the connection (man-in-the-middle), or the host was reinstalled. "+
			"drover will not connect. If you know why it changed, remove the old entry at %s (ssh-keygen -R '%s' -f %s) and connect again",
			e.Host, e.KeyType, e.Fingerprint, strings.Join(e.Known, ", "), strings.Join(e.Known, ", "), knownhosts.Normalize(e.Host), e.KnownHosts)
	case HostKeyRevoked:
		return fmt.Sprintf("host key for %s (%s %s) is marked @revoked at %s; drover will not connect",
			e.Host, e.KeyType, e.Fingerprint, strings.Join(e.Known, ", "))
	default:
		return fmt.Sprintf("host key for %s is unknown: it offers %s %s, which is not in %s. "+
			"Check the fingerprint with the host's owner, then run: ssh-keyscan -p %s %s >> %s, "+
			"or pass --insecure-accept-new to trust it on first use",
			e.Host, e.KeyType, e.Fingerprint, e.KnownHosts, port, host, e.KnownHosts)
	}
}

// hostKeyChecker checks host keys against one known_hosts file and, when
// asked to, records keys of hosts it has never seen.
type hostKeyChecker struct {
	file      string
	acceptNew bool
	log       *slog.Logger
	db        gossh.HostKeyCallback // nil when the file does not exist
	refused   *HostKeyError         // the last refusal, for Dial's error
}

func newHostKeyChecker(file string, acceptNew bool, log *slog.Logger) (*hostKeyChecker, error) {
	k := &hostKeyChecker{file: file, acceptNew: acceptNew, log: log}
	db, err := knownhosts.New(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read known_hosts: %w", err)
	default:
		k.db = db
	}
	return k, nil
}

// algorithms returns the host key algorithms to ask for so the host offers
// a key of a type known_hosts holds for addr, as OpenSSH does; nil when
// none is known. Without this a host with several keys might offer one
// known_hosts has no entry for, which would look like a changed key.
func (k *hostKeyChecker) algorithms(addr string) []string {
	if k.db == nil {
		return nil
	}
	_, priv, err := ed25519.GenerateKey(zeroReader{})
	if err != nil {
		return nil
	}
	probe, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if err := k.db(addr, &net.TCPAddr{IP: net.IPv4zero}, probe.PublicKey()); !errors.As(err, &ke) {
		return nil
	}
	var algos []string
	seen := map[string]bool{}
	for _, w := range ke.Want {
		names := []string{w.Key.Type()}
		if w.Key.Type() == gossh.KeyAlgoRSA {
			names = []string{gossh.KeyAlgoRSASHA512, gossh.KeyAlgoRSASHA256, gossh.KeyAlgoRSA}
		}
		for _, n := range names {
			if !seen[n] {
				seen[n] = true
				algos = append(algos, n)
			}
		}
	}
	return algos
}

// check is the gossh.HostKeyCallback.
func (k *hostKeyChecker) check(addr string, remote net.Addr, key gossh.PublicKey) error {
	he := &HostKeyError{
		Host: addr, KeyType: key.Type(), Fingerprint: gossh.FingerprintSHA256(key), KnownHosts: k.file,
	}
	var err error = &knownhosts.KeyError{}
	if k.db != nil {
		err = k.db(addr, remote, key)
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		he.Problem = HostKeyRevoked
		he.Known = []string{re.Revoked.Filename + ":" + strconv.Itoa(re.Revoked.Line)}
	case errors.As(err, &ke) && len(ke.Want) > 0:
		he.Problem = HostKeyChanged
		for _, w := range ke.Want {
			he.Known = append(he.Known, w.Filename+":"+strconv.Itoa(w.Line))
		}
	case errors.As(err, &ke):
		he.Problem = HostKeyUnknown
		if k.acceptNew {
			if err := appendKnownHost(k.file, addr, key); err != nil {
				return fmt.Errorf("add host key of %s to %s: %w", addr, k.file, err)
			}
			k.log.Warn("trusting new host key", "host", addr, "key", key.Type(), "fingerprint", he.Fingerprint, "known_hosts", k.file)
			return nil
		}
	default:
		return fmt.Errorf("check host key of %s against %s: %w", addr, k.file, err)
	}
	k.refused = he
	return he
}

// appendKnownHost adds one line to a known_hosts file with a single
// O_APPEND write, so parallel dials do not interleave their lines.
func appendKnownHost(file, addr string, key gossh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, key) + "\n"
	if fi, err := f.Stat(); err == nil && fi.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, fi.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	if _, err := io.WriteString(f, line); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// zeroReader makes the probe key deterministic; it never signs anything.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
