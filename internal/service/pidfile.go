package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// recordSchema versions the JSON line of a PID file.
const recordSchema = 1

// record is what a PID file holds. The file's first line is the bare PID,
// so `kill $(head -1 web-8000.pid)` works; the second line is this record
// as JSON. StartTicks (field 22 of /proc/<pid>/stat) and BootID tell the
// process apart from a later one that got the same PID.
type record struct {
	Schema     int       `json:"schema"`
	PID        int       `json:"pid"`
	StartTicks uint64    `json:"start_ticks"`
	BootID     string    `json:"boot_id,omitempty"`
	Service    string    `json:"service"`
	Port       int       `json:"port,omitempty"`
	ReleaseDir string    `json:"release_dir"`
	Command    string    `json:"command"`
	StartedAt  time.Time `json:"started_at"`
}

// pid returns the PID rec names, or 0 for no record.
func (r *record) pid() int {
	if r == nil {
		return 0
	}
	return r.PID
}

// procState is what a PID file says about its process.
type procState int

const (
	stateNone    procState = iota // no PID file
	stateStale                    // PID file of a process that is gone, or a PID now reused
	stateRunning                  // the process the PID file names is alive
)

// inspect reads the PID file at path and checks its process. A PID file
// that cannot be parsed counts as stale (its record is then nil); only an
// unreadable one is an error.
func inspect(path string) (*record, procState, error) {
	rec, err := readRecord(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, stateNone, nil
	case errors.Is(err, errBadRecord):
		return nil, stateStale, nil
	case err != nil:
		return nil, stateNone, fmt.Errorf("read PID file: %w", err)
	}
	if alive(rec) {
		return rec, stateRunning, nil
	}
	return rec, stateStale, nil
}

var errBadRecord = errors.New("malformed PID file")

func readRecord(path string) (*record, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	first, rest, _ := bytes.Cut(data, []byte("\n"))
	pid, err := strconv.Atoi(strings.TrimSpace(string(first)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("%s: %w", path, errBadRecord)
	}
	rec := &record{}
	if err := json.Unmarshal(bytes.TrimSpace(rest), rec); err != nil || rec.PID != pid {
		return nil, fmt.Errorf("%s: %w", path, errBadRecord)
	}
	return rec, nil
}

// writeRecord writes rec to path atomically: temp file, fsync, rename,
// fsync of the directory.
func writeRecord(path string, rec *record) error {
	js, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = fmt.Fprintf(tmp, "%d\n%s\n", rec.PID, js)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// procStat is the part of /proc/<pid>/stat drover reads.
type procStat struct {
	state      byte
	pgrp       int
	startTicks uint64
}

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or
	// parentheses itself; the fields after it start at the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	pgrp, err := strconv.Atoi(f[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat pgrp: %w", pid, err)
	}
	ticks, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat starttime: %w", pid, err)
	}
	return procStat{state: f[0][0], pgrp: pgrp, startTicks: ticks}, nil
}

// bootID identifies this boot of the machine, so a PID file written before
// a reboot is stale whatever its PID.
func bootID() string {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// alive reports whether the process rec names still runs: same PID, same
// start time, same boot, not a zombie. A zombie that is drover's own child
// (started by Start in this process) is reaped here.
func alive(rec *record) bool {
	if rec.BootID != "" {
		if b := bootID(); b != "" && b != rec.BootID {
			return false
		}
	}
	st, err := readStat(rec.PID)
	if err != nil || st.startTicks != rec.StartTicks {
		return false
	}
	if st.state == 'Z' || st.state == 'X' {
		var ws syscall.WaitStatus
		_, _ = syscall.Wait4(rec.PID, &ws, syscall.WNOHANG, nil)
		return false
	}
	return true
}
