"""Mount points from /proc/self/mountinfo (what a cancelled build's cleanup detaches)."""
import pytest

from builder.linux import mount_points


@pytest.mark.parametrize("line,point", [
    ("36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue", "/mnt/parent"),
    ("40 22 0:41 / /tmp/a\\040b/merged rw,relatime - overlay overlay rw,lowerdir=/x", "/tmp/a b/merged"),
    ("41 22 0:42 / /tmp/tab\\011and\\134slash rw - tmpfs tmpfs rw", "/tmp/tab\tand\\slash"),
])
def test_mount_points_decode_octal_escapes(line, point):
    assert mount_points(line + "\n") == [point]


def test_short_lines_are_skipped():
    assert mount_points("garbage\n\n1 2 3\n") == []
