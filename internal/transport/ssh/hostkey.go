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
	Alias       string         // HostKeyAlias from the ssh config: the name known_hosts files hold for Host, or ""
	Problem     HostKeyProblem // why the key was refused
	KeyType     string         // type of the key the host offered, e.g. ssh-ed25519
	Fingerprint string         // SHA256 fingerprint of that key, "SHA256:..."
	KnownHosts  string         // the user known_hosts file a trusted key belongs in ("" when none)
	Files       []string       // every known_hosts file consulted, user files first
	Known       []string       // for HostKeyChanged/Revoked: "file:line" of the entries that disagree
	Note        string         // a config option that explains or forbids more, e.g. StrictHostKeyChecking
	refuseNew   bool           // Note says why the key may not be accepted on first use
}

// Error explains the refusal and how to fix it.
func (e *HostKeyError) Error() string {
	host, port, _ := net.SplitHostPort(e.Host)
	name := knownhosts.Normalize(e.Host)
	who := e.Host
	if e.Alias != "" {
		name = e.Alias
		who = fmt.Sprintf("%s (HostKeyAlias %s)", e.Host, e.Alias)
	}
	var msg string
	switch e.Problem {
	case HostKeyChanged:
		var fixes []string
		seen := map[string]bool{}
		for _, k := range e.Known {
			file := k[:strings.LastIndexByte(k, ':')]
			if !seen[file] {
				seen[file] = true
				fixes = append(fixes, fmt.Sprintf("ssh-keygen -R '%s' -f %s", name, file))
			}
		}
		msg = fmt.Sprintf("host key for %s HAS CHANGED: it now offers %s %s, which does not match %s. "+
			"Someone may be intercepting the connection (man-in-the-middle), or the host was reinstalled. "+
			"drover will not connect. If you know why it changed, remove the old entry at %s (%s) and connect again",
			who, e.KeyType, e.Fingerprint, strings.Join(e.Known, ", "), strings.Join(e.Known, ", "), strings.Join(fixes, "; "))
	case HostKeyRevoked:
		msg = fmt.Sprintf("host key for %s (%s %s) is marked @revoked at %s; drover will not connect",
			who, e.KeyType, e.Fingerprint, strings.Join(e.Known, ", "))
	default:
		files := strings.Join(e.Files, ", ")
		if files == "" {
			files = "any known_hosts file"
		}
		msg = fmt.Sprintf("host key for %s is unknown: it offers %s %s, which is not in %s. Check the fingerprint with the host's owner",
			who, e.KeyType, e.Fingerprint, files)
		if e.KnownHosts != "" && e.KnownHosts != os.DevNull {
			scan := fmt.Sprintf("ssh-keyscan -p %s %s", port, host)
			if e.Alias != "" {
				scan += fmt.Sprintf(" | sed 's/^[^ ]*/%s/'", e.Alias)
			}
			msg += fmt.Sprintf(", then run: %s >> %s", scan, e.KnownHosts)
		}
		if e.refuseNew {
			return msg + ". drover will not trust it on first use: " + e.Note
		}
		msg += ", or pass --insecure-accept-new to trust it on first use"
	}
	if e.Note != "" {
		msg += ". " + e.Note
	}
	return msg
}

// hostKeyChecker checks host keys against the known_hosts files of one
// hop and, when allowed to, records keys of hosts none of them knows.
type hostKeyChecker struct {
	trust   trust
	files   []string // every file consulted, user files first
	log     *slog.Logger
	db      gossh.HostKeyCallback // nil when no file exists
	refused *HostKeyError         // the last refusal, for Dial's error
}

func newHostKeyChecker(tr trust, log *slog.Logger) (*hostKeyChecker, error) {
	k := &hostKeyChecker{trust: tr, log: log}
	k.files = append(append(k.files, tr.userFiles...), tr.globalFiles...)
	var existing []string
	for _, f := range k.files {
		if _, err := os.Stat(f); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		existing = append(existing, f)
	}
	if len(existing) == 0 {
		return k, nil
	}
	db, err := knownhosts.New(existing...)
	if err != nil {
		return nil, fmt.Errorf("read known_hosts: %w", err)
	}
	k.db = db
	return k, nil
}

// name is what addr is looked up as in known_hosts: the HostKeyAlias
// when the config gives one (without a port, as ssh(1) does), else addr.
func (k *hostKeyChecker) name(addr string) string {
	if k.trust.alias != "" {
		return net.JoinHostPort(k.trust.alias, "22")
	}
	return addr
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
	if err := k.db(k.name(addr), &net.TCPAddr{IP: net.IPv4zero}, probe.PublicKey()); !errors.As(err, &ke) {
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

// check is the gossh.HostKeyCallback. A key matching an entry in any file
// is trusted; one for a host that any file pins with other keys is
// refused; only a host no file knows may be recorded, in the first user
// file, and only when acceptNew and nothing in the config forbids it.
func (k *hostKeyChecker) check(addr string, remote net.Addr, key gossh.PublicKey) error {
	he := &HostKeyError{
		Host: addr, Alias: k.trust.alias, KeyType: key.Type(), Fingerprint: gossh.FingerprintSHA256(key),
		Files: k.files, Note: k.trust.note,
	}
	if len(k.trust.userFiles) > 0 {
		he.KnownHosts = k.trust.userFiles[0]
	}
	var err error = &knownhosts.KeyError{}
	if k.db != nil {
		err = k.db(k.name(addr), remote, key)
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
		switch {
		case k.trust.acceptNew && k.trust.refuseNew != "":
			he.Note, he.refuseNew = k.trust.refuseNew, true
		case k.trust.acceptNew:
			if err := appendKnownHost(he.KnownHosts, k.name(addr), key); err != nil {
				return fmt.Errorf("add host key of %s to %s: %w", addr, he.KnownHosts, err)
			}
			k.log.Warn("trusting new host key", "host", addr, "alias", k.trust.alias, "key", key.Type(), "fingerprint", he.Fingerprint, "known_hosts", he.KnownHosts)
			return nil
		}
	default:
		return fmt.Errorf("check host key of %s against %s: %w", addr, strings.Join(k.files, ", "), err)
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
