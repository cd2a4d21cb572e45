from wizardcoder_tpu.cli import main

raise SystemExit(main())
