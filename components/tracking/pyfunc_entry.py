"""MLflow "models from code" entry: logged with every registered vitpipe model.

MLflow executes this file when the model is loaded; it only names the wrapper class (no
pickled object is stored anywhere). See :mod:`components.tracking.packaging`.
"""

from mlflow.models import set_model

from components.tracking.packaging import VitpipePyfunc

set_model(VitpipePyfunc())
