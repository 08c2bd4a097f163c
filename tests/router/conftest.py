import sys
from pathlib import Path

# the tiny decode programs (decode_fixtures) are shared with tests/decode
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "decode"))
