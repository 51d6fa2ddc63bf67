"""The exported runtime: its jaxnas imports made flat, and nothing else of jaxnas in it."""

import os
import re

from absl.testing import absltest

from jaxnas.modes import export


class FlattenImportsTest(absltest.TestCase):

    def test_bundled_modules_become_flat_imports(self):
        source = ("import numpy as np\nfrom jaxnas import inference\n"
                  "from jaxnas.data import preprocess\nfrom jaxnas.errors import DataError\n")
        self.assertEqual(export.flatten_imports(source),
                         "import numpy as np\nimport inference\nimport preprocess\n"
                         "from errors import DataError\n")

    def test_other_jaxnas_imports_are_refused(self):
        with self.assertRaisesRegex(ValueError, "from jaxnas.data import msd"):
            export.flatten_imports("from jaxnas.data import msd\n")

    def test_runtime_modules_import_only_each_other(self):
        # The copies an export carries: any other jaxnas import would break the runner.
        for name, rel in export.RUNTIME.items():
            with open(os.path.join(export.PACKAGE, rel)) as f:
                flat = export.flatten_imports(f.read())
            self.assertEmpty(re.findall(r"^\s*(?:from|import) jaxnas", flat, re.M), name)


if __name__ == "__main__":
    absltest.main()
