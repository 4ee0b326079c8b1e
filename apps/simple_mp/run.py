"""simple_mp in one command: the primary, with an echo secondary.

    python apps/simple_mp/run.py [--prefix P] [--runtime-dir D]

Type `send <text>` (the secondary answers "echo: <text>"), `status` or
`quit`; commands can be piped in: printf 'send hi\\nquit\\n' | python run.py
"""

import sys

import primary

if __name__ == "__main__":
    sys.exit(primary.main(sys.argv[1:], with_secondary=True))
